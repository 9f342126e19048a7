"""PV-RNN (paper 3): a variational multiple-timescale RNN without an encoder, its meta-prior
w, and error regression."""

from zoo.models.pv_rnn import model  # noqa: F401  (registers pv_rnn)
