"""Stage `ingest`: annotations + images -> data/interim/captions.parquet and reports/ingest.json.

Every input caption is accounted for: it is either kept, or dropped with a problem in the report
naming its file, row and reason. With `on_bad_* = fail` (the default) any problem fails the stage
with a one-line summary, after the report is written.

Modules:
    config   IngestConfig, DemoConfig: the `data` section of params.yaml and its rules
    readers  read_source: the demo, Karpathy JSON, table (CSV, TSV, JSONL, Parquet) and LAMP txt readers
    images   relocate_images (re-rooting another machine's paths), check_image, check_images
    stage    assemble (checks, policies, caption limit, report), write_outputs, run (the whole stage)
    demo     generate_demo: the synthetic data set of twin scenes (a package of its own)
"""
