"""Read-only renderings of the record: Markdown and JSONL, the HTML report, the dataset."""
