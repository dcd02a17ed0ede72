"""Where each stage reads and writes, relative to the project root (as in dvc.yaml)."""
from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"  # prepare: the verified downloaded (or mirrored) corpus files
PREPARED = DATA / "prepared"  # prepare: {train,val,test}.{src,tgt}, SentencePiece model(s), stats.json
SUBSAMPLED = DATA / "subsampled"  # subsample: train.{src,tgt}, stats.json
TRAIN = DATA / "train"
CHECKPOINTS = TRAIN / "checkpoints"  # train: epoch_NNN.pt, the last keep_checkpoints epochs
TRAIN_STATE = TRAIN / "state"  # train: resume state (persist, not cached)
TRAIN_LOG = TRAIN / "log"  # train: epochs.tsv, steps.tsv (DVC plots)
TRAIN_LIVE = TRAIN / "live"  # train: DVCLive's files while it runs (not an output)
TRAIN_METRICS = TRAIN / "metrics.json"
MODEL = DATA / "model"  # swa-average: averaged.pt, info.json
TRANSLATIONS = DATA / "translations"  # translate: {val,test}.hyp
BLEU_METRICS = DATA / "bleu" / "metrics.json"
BLEU_SIGNATURES = DATA / "bleu" / "signatures.json"  # bleu: sacreBLEU signatures per split
FIGURES = Path("reports") / "figures"  # plots: PNGs
SPLITS = ("train", "val", "test")
