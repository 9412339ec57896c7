"""Knowledge editing: change one fact in a model's weights (ROME, MEMIT) or in its prompt (IKE).

The pieces, each with one job:

* ``requests``: the edit request (prompt, subject, target, rephrases, locality,
  neighbourhood and portability probes) and its JSONL file format;
* ``model``: an HF Llama-family checkpoint opened for editing (tokenizer, chat
  template, the ``mlp.down_proj`` modules an edit rewrites, hooks);
* ``contexts``, ``rome``, ``memit``, ``covariance``: the two weight-editing methods;
* ``ike``: the in-context method, an edit memory that ``chat`` attaches;
* ``metrics``, ``evaluate``: reliability / generalization / locality / neighbourhood / portability,
  teacher-forced and generated, and fluency, through torch or llama.cpp;
* ``log``: the edited folder's edit log, so that every edit can be undone exactly;
* ``run``: the library functions under ``knowlm-local edit``.
"""
