"""Local evaluation of the three course tasks: eval sets, backends (in-process or HTTP), plots."""
