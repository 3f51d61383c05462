"""Korean + English LM evaluation harness (issue 18)."""
