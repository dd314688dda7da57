"""MLflow names of the trainer's per-epoch training figures, spelled once: the trainer writes them, run import reads an
older ``metrics.jsonl``'s nested rows back under them."""

# Metric names of the loss parts (combined_loss) and of the negatives' stats (MiningResult.stats)
LOSS_NAMES = {"total": "train/loss", "triplet": "train/loss_triplet", "ce_pos": "train/loss_ce_pos",
              "ce_neg": "train/loss_ce_neg", "in_batch": "train/loss_in_batch"}
NEGATIVE_NAMES = {"point": "negatives/point_frac", "counter": "negatives/counter_frac",
                  "random": "negatives/random_frac", "same_debate": "negatives/same_debate_frac",
                  "same_theme": "negatives/same_theme_frac", "mean_distance": "negatives/mean_distance",
                  "copy": "negatives/copy_frac", "ratio_skipped": "negatives/ratio_skipped"}
