"""The search engines and what they are built from: the exact engine (`exact`), the brute force it is checked against
(`reference`), the approximate screen (`approx`); how they run (`placement`, `precision`, `dtype_choice`, `head_bound`,
`replay`, `sweeps`) and at scale (`ranks`, `distributed`, `checkpoint`, `plan`). `core.search_function` maps an engine's
name to its search."""
