"""Instruction processing with a local model: generate, evolve, back-translate, select; IE instructions from triples.

Each job is a small module with a library function under a `knowlm-local instruct` subcommand:

* :mod:`~knowlm_local.instruct.generate`: self-instruct (new tasks from seed tasks, one JSON-constrained call each);
* :mod:`~knowlm_local.instruct.evolve`: Evol-Instruct rewrites (constraints, deepen, concretize, reasoning, broaden);
* :mod:`~knowlm_local.instruct.backtranslate`: the instruction a document answers, kept on a 5-point self-rating;
* :mod:`~knowlm_local.instruct.select`: exact and near-duplicate removal, length, MTLD, ROUGE-L novelty, perplexity,
  self-rating, random sampling;
* :mod:`~knowlm_local.instruct.triples`: KG2Instruct-style IE instructions from (head, relation, tail) triples,
  through the IE data builder of ``build-ie-data``.

Everything writes Alpaca JSON Lines (``instruction``, ``input``, ``output`` plus ``id`` and ``origin``) that
``finetune`` reads as it is. The metrics (ROUGE-L, MTLD, MinHash) are implemented in
:mod:`~knowlm_local.instruct.metrics` from their definitions.
"""
