"""One worker of the two-process MultiWorkerMirroredStrategy test (TF_CONFIG set by the test).

Usage: python distributed_worker.py INIT_WEIGHTS OUT_NPZ GLOBAL_BATCH
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from distributed_helpers import flat_weights, make_batch  # noqa: E402

import malign  # noqa: E402


def main():
    init_path, out_path, global_batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = malign.distributed.get_strategy("multiworker")
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    batch = make_batch(global_batch)
    with strategy.scope():
        model = malign.AlignModel.from_preset("tiny")
        model.compile(optimizer=keras.optimizers.SGD(0.5))
    model.load_weights(init_path)

    def dataset_fn(ctx: tf.distribute.InputContext):
        per_replica = ctx.get_per_replica_batch_size(global_batch)
        start = ctx.input_pipeline_id * per_replica
        # This worker's half of the global batch (rows [start, start + per_replica)).
        half = {k: v[start:start + per_replica] for k, v in batch.items()}
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF)
        return (tf.data.Dataset.from_tensor_slices(half).batch(per_replica).repeat()
                .with_options(options))

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    history = model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
    weights = flat_weights(model)
    np.savez(out_path, __loss__=np.array(history.history["loss"][0]), __task__=np.array(task),
             **weights)


if __name__ == "__main__":
    main()
