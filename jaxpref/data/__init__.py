"""Preference data: synthetic tasks with known ground truth (`jaxpref.data.synthetic`)."""
