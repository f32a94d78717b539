"""Ember's own small default image model: a captioned-shapes dataset rendered with Pillow, its trainer and eval."""
