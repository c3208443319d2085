"""Task sources: what a learner trains and is evaluated on, built from datasets held as tensors.

Episodes (N-way K-shot support and query sets), pairs (Siamese networks), label-delayed sequences
(MANN, SNAIL), flat mini-batches (pre-training baselines) and generated regression tasks (sinusoid);
``sources`` turns a run's ``data:`` config and a split name into one of them.
"""
