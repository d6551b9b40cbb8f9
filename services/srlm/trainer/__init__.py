"""Training with TRL: SFT (M0 -> M1) and DPO (M_t -> M_{t+1}), published to the model store.

Import the entry points from their modules (``srlm.trainer.sft.train_sft``,
``srlm.trainer.dpo.train_dpo``): they load torch and TRL, which the service imports lazily.
"""
