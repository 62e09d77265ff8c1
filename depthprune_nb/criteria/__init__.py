"""Criteria other than the perplexity window search: the angular distance proxy, block influence and SLEB."""
