"""Triton serving: model configs built through Triton's protobuf, the repository writer, a local server and a
client. Reads artifacts from disk and never imports the export package."""
