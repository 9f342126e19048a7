"""Video representations for RL (paper 22) as a forward-modelling HMM: the gridworld videos,
the HMM with its enumerated state decoder, and the contrastive and k-means baselines."""

from zoo.models.video_rl import model  # noqa: F401  (registers video_rl)
