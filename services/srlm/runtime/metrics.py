"""Prometheus metrics every service exposes on its metrics port (``/metrics``)."""

from prometheus_client import Counter, Gauge, Histogram, Info

RECORDS_IN = Counter("srlm_records_in_total", "Kafka records consumed", ["service", "topic"])
RECORDS_OUT = Counter("srlm_records_out_total", "Kafka records produced", ["service", "topic"])
DUPLICATES = Counter("srlm_duplicates_total", "Replayed records recognised by id and skipped", ["service"])
ERRORS = Counter("srlm_errors_total", "Errors by kind", ["service", "kind"])
BATCH_SECONDS = Histogram("srlm_batch_seconds", "Time to process one batch of records", ["service"],
                          buckets=(0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600))
GENERATED_TOKENS = Counter("srlm_generated_tokens_total", "Tokens generated", ["service"])
TOKENS_PER_SECOND = Gauge("srlm_tokens_per_second", "Output tokens/s of the last generation batch", ["service"])
JUDGMENTS = Counter("srlm_judgments_total", "Judge samples, by whether a score was parsed", ["parsed"])
JUDGE_PARSE_RATE = Gauge("srlm_judge_parse_rate", "Share of judge samples with a parsed score (last batch)")
JUDGE_SCORE = Histogram("srlm_judge_score", "Mean judge score of a response (responses with a parsed score)",
                        buckets=(0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5))
MODEL_VERSION = Info("srlm_model", "Model version currently served")
MODEL_LOAD_SECONDS = Histogram("srlm_model_load_seconds", "Time to load a model version", ["service"],
                               buckets=(0.5, 1, 2, 5, 10, 20, 60, 120))
EVAL_METRIC = Gauge("srlm_eval_metric", "Evaluation suite figure of a model version (value and its 95% interval)",
                    ["version", "metric", "bound"])

# The chart's PrometheusRule and Grafana dashboard (helm/srlm) query the metrics below; each
# labelled one shows its HELP/TYPE from process start, so a missing name is a chart bug.
CONSUMER_LAG = Gauge("srlm_consumer_lag_records",
                     "Records on the input topic not yet consumed by this member (end offset - position, "
                     "summed over its assigned partitions)", ["service", "topic"])
DEAD_LETTERS = Counter("srlm_dead_letters_total", "Records sent to the dead-letter topic, by reason",
                       ["service", "kind"])
ROLLOUTS = Counter("srlm_rollouts_total",
                   "Promotions rolled out to the inference Deployments, by outcome "
                   "(complete | rolled_back | rollback_failed)", ["outcome"])
TRAIN_LOSS = Gauge("srlm_train_loss", "Training loss of the last logged step", ["version"])
DPO_REWARD_MARGIN = Gauge("srlm_dpo_reward_margin",
                          "DPO reward margin (chosen - rejected implicit reward) of the last logged step",
                          ["version"])
TRAIN_STEP = Gauge("srlm_train_step", "Last logged optimizer step", ["version"])


def record_training_logs(version: str, step: int, logs: dict[str, float]) -> None:
    """A trainer log line (HF Trainer ``on_log``) -> the training gauges of ``version``."""
    TRAIN_STEP.labels(version).set(step)
    if "loss" in logs:
        TRAIN_LOSS.labels(version).set(logs["loss"])
    if "rewards/margins" in logs:  # TRL DPOTrainer's key
        DPO_REWARD_MARGIN.labels(version).set(logs["rewards/margins"])
