"""The three training stages of the paper and the main job that chains them.

    finetune   stage 1: fine-tune the CLIP image encoder on labelled frames
    features   stage 2: per-frame features of every video into the feature cache
    temporal   stage 3: the temporal model's training loop, losses and checkpoints
    windows    window datasets of stage 3 (batches cut on demand from feature arrays)
    optim      the learning-rate schedule and the class-weight rule both training stages use
    pipeline   the main job: data -> stage 1 -> stage 2 -> stage 3 -> bundle, each cached
    ablation   the paper's ablation (Table 2) and the feature probe

Nothing is imported here: ``import affaccel.stages`` stays cheap.
"""
