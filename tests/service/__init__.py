"""Tests of the inference service (`service/`)."""
