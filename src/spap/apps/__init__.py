"""Applications built on the library: the end-to-end demo and the HTML report of a run."""
