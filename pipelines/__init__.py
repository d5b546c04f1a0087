"""Jobs that join dicom_io and medxai (ingest, train, explain, export, bench, demo), and the CLI."""
