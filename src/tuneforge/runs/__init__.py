"""Runs: the directory a run is written into (`directory`), a finished run loaded back (`run`),
the SQLite registry of runs and model versions (`registry`), the promotion gate (`promotion`) and
where a run came from (`provenance`).

Nothing is imported here, so `tuneforge.runs.directory` stays cheap for the modules that only
write files.
"""
