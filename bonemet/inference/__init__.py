"""The CAD pipeline: read a scan, run the models, measure lesions, write masks and reports."""
