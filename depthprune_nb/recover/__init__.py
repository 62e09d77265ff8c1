"""After the cut: a training-free linear repair folded into the weights (`repair`), and healing by training (`heal`)."""
