"""Figures, tables and an HTML report built from run folders alone (docs/run_folder.md).

The package reads only the files training writes (config.json, metrics.jsonl, verdict.json, result.json, the
sweep's sweep.json), so a report can be regenerated on any copy of the folders. It must never import the training
code: a laptop with matplotlib and pandas is enough. Entry points: `python -m analysis.report <dir>`,
`analysis.report.generate_report`, `python -m analysis.compare A B` (two sweeps' findings, claim by claim), and
for notebooks `analysis.frames.load_sweep` / `load_curves`.
"""
