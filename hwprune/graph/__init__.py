"""The pruning space: coupled channel groups, layer shapes in terms of group widths, surgery, sub-networks, plans."""
