"""The run directory's records, used by both sides: paths, atomic writes, parts, markers, fingerprints and
their verification. The only code that decides "this verifies". Imports neither ``login`` nor ``task``."""
