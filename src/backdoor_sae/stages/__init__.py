"""What each notebook does, one module per stage; the notebooks keep narrative, tables and figures.

- :mod:`.dataset` (notebook 01): the dataset in the run directory
- :mod:`.finetune` (notebook 02): the fine-tunes, and the judged generations of every model
- :mod:`.activations` (notebook 03): the paired activation cache
- :mod:`.dictionaries` (notebook 04): the grid of Diff-SAEs and crosscoders
- :mod:`.scoring` (notebook 05): BIS of every dictionary and baseline, with its statistics

Where every artifact lives and when one is reused: :mod:`backdoor_sae.layout`. Executing the
notebooks in order: :mod:`backdoor_sae.runner`.
"""
