"""Shared base config: model / optimizer / mesh / checkpoint sections that experiments extend.

Not launched by itself; experiment configs call `base.get_config()` and override fields.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.job = 'sft'  # Which loop si_jax.main runs: 'sft'.
  c.seed = 0  # Seeds params, data order and sampling.
  c.workdir = '/tmp/si_jax/run'  # Checkpoints, tokenizer and metrics go here.
  c.init_from = ''  # Warm start: an earlier run's workdir (its tokenizer and params).
  # Start from a Hugging Face checkpoint directory (Llama / Gemma / Qwen2: config.json,
  # *.safetensors, tokenizer.model): its architecture replaces config.model, and its weights
  # and tokenizer are the start (si_jax/models/hf.py).
  c.init_from_hf = ''
  c.tokenizer_extra_chars = ''  # Characters beyond the task's alphabet (e.g. a judge template's).

  # --- Task: si_jax/tasks; experiments replace this section with their task's fields. ---
  c.task = ml_collections.ConfigDict()
  c.task.name = 'reverse'  # A name of si_jax.tasks.get_task; the other fields are its kwargs.

  # --- Labelled data of the SFT phase (si_jax/train.py, si_jax/layout.py). ---
  c.data = ml_collections.ConfigDict()
  c.data.seq_len = 32  # Tokens per row: bos + prompt + answer + eos must fit.
  # > 0: a fixed labelled seed set of this many problems (the only labels of a self-improvement
  # run), drawn once from [seed, 0]; 0: fresh labelled problems every step.
  c.data.seed_set_size = 0
  c.data.difficulty_weights = ()  # The seed set's mix over the task's levels; () is uniform.
  c.data.seed_validation_size = 0  # Held out of the seed set: monitors and control tuning.
  # STaR: a share of the SFT phase's prompts carry the final answer as a hint, placed by
  # hint_template ('{answer}', '{prompt}'), so the model learns to rationalize a given answer.
  c.data.hint_fraction = 0.0
  c.data.hint_template = ''

  # --- The SFT phase: the SFT job, or the base phase of a GRO job (si_jax/train.py). ---
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000  # Optimizer steps.
  c.train.batch_size = 64  # Rows per step.
  c.train.log_every = 100  # Progress-bar and metrics.jsonl period.
  c.train.eval_size = 256  # Held-out problems for the final greedy exact-match accuracy.
  # A GRO job's base phase (run when init_from is empty) trains with these instead of
  # config.optimizer's, which belong to the job's own updates.
  c.base_learning_rate = 1e-3  # Peak learning rate of the base phase.
  c.base_schedule = 'cosine'  # Its schedule (config.optimizer.schedule's choices).

  # --- Model: si_jax.models.TransformerConfig fields (REF-25M, Llama-style, by default). ---
  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 1024  # >= tokenizer pieces; checked at start-up.
  c.model.d_model = 512  # Residual stream width.
  c.model.num_layers = 8  # Transformer blocks.
  c.model.num_heads = 8  # Query heads.
  c.model.num_kv_heads = 4  # Key/value heads: < num_heads is GQA, 1 is MQA.
  c.model.head_dim = 64  # Per-head width.
  c.model.mlp_dim = 1408  # Hidden width of the gated MLP.
  c.model.activation = 'swiglu'  # 'swiglu' (Llama/Qwen) or 'geglu' (Gemma).
  c.model.norm_eps = 1e-6  # RMSNorm epsilon.
  c.model.norm_scale_plus_one = False  # Gemma-style RMSNorm scale (1 + w).
  c.model.position_encoding = 'rope'  # 'rope' or 'none' (NoPE).
  c.model.rope_theta = 10_000.0  # RoPE base frequency.
  c.model.tie_embeddings = False  # Share input embedding and output projection.
  c.model.embed_scale = False  # Scale embeddings by sqrt(d_model) (Gemma).
  c.model.qk_norm = False  # RMSNorm on per-head queries and keys (Qwen3).
  c.model.qkv_bias = False  # Biases on the query/key/value projections (Qwen2).
  c.model.logit_softcap = 0.0  # > 0: cap * tanh(logits / cap) (Gemma2); 0 disables.
  c.model.param_dtype = 'float32'  # Storage dtype of parameters.
  c.model.dtype = 'float32'  # Compute dtype ('bfloat16' on accelerators).
  c.model.remat = False  # Rematerialise blocks in the backward pass (saves memory).

  # --- Optimizer: AdamW (si_jax/optimizers.py). ---
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-3  # Peak learning rate.
  c.optimizer.schedule = 'cosine'  # 'cosine', 'wsd' (warmup-stable-decay) or 'constant'.
  c.optimizer.warmup_steps = 100  # Linear warmup from 0.
  c.optimizer.decay_fraction = 0.2  # 'wsd' only: fraction of steps spent decaying.
  c.optimizer.end_lr_fraction = 0.1  # Final LR as a fraction of the peak.
  c.optimizer.restart_every = 0  # > 0: restart the schedule every that many steps (per round).
  c.optimizer.b1 = 0.9  # Adam beta1.
  c.optimizer.b2 = 0.98  # Adam beta2.
  c.optimizer.eps = 1e-9  # Adam epsilon.
  c.optimizer.weight_decay = 0.01  # Decoupled weight decay on matrices.
  c.optimizer.grad_clip = 1.0  # Global-norm clipping; <= 0 disables.
  c.optimizer.grad_accum_steps = 1  # Microbatches per update (batch_size must divide).

  # --- Mesh: device axes; -1 = the rest of the devices (si_jax/sharding.py). ---
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1  # Pure data parallelism.
  c.mesh.fsdp = -1  # Data parallelism + parameter sharding (the default).
  c.mesh.tensor = 1  # Tensor parallelism over heads / mlp / vocab.

  # --- Checkpoints (si_jax/checkpoint.py). ---
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 500  # Save period in optimizer steps (and always at the end).
  c.checkpoint.max_to_keep = 2  # Older checkpoints are deleted.
  c.checkpoint.async_save = True  # Write in a background thread while training continues.
  c.checkpoint.resume = True  # Continue from the latest checkpoint in workdir if there is one.
  return c


def use_tiny_model(c: ml_collections.ConfigDict, vocab_size: int = 24):
  """The ~100k-parameter model the CPU-scale experiments train from scratch in seconds."""
  c.model.vocab_size = vocab_size  # Char tokenizers of the tasks need a few dozen ids.
  c.model.d_model = 64
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 16
  c.model.mlp_dim = 192
