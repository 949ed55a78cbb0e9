"""Slider panels, one module per lesson; each defines PANELS."""
