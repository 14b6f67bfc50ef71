"""The CAD pipeline (SPEC 4): read a scan, run the models, measure lesions, write masks and reports."""
