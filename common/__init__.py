"""sdedge.common: the floor every stage stands on and no stage owns.

Errors (:mod:`.errors`), atomic writes and staging folders (:mod:`.atomic`), host and device names
(:mod:`.hostinfo`), sha256 digests (:mod:`.digest`), canonical JSON (:mod:`.jsonio`), datasets by name
with the limit and hold-out rules and the ``DataSpec`` record (:mod:`.datasets`), and the dataset file
readers and folder finders (:mod:`.dataset_files`). Imports numpy at most and nothing else of the
project, so the training core, export, the runtime and calibration can all build on it; a test in
``tests/test_architecture.py`` holds it to that.
"""
