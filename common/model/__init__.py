"""The BigBiGAN model, shared by sites and server: E, G and D (`bigbigan.py`,
`layers.py`), its losses and one training step (`gan_training.py`), which
weights leave a site (`model_parts.py`), checkpoints, the TF Hub warm start,
AdaBN, the tf.data input and image grids. Plain TensorFlow: no Flower."""
