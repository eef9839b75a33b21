"""The IBP variational parameters' own optimizer (as the TF reference).

konpanousis/adversarial_ecoc_lwta trains the IBP sticks and utility logits
with an Adam of their own (at 10x the weights' learning rate) and no weight
decay. Here the weights keep the run's SGD; the variational parameters
(`ibp.VARIABLE_NAMES`) get Adam at `TrainConfig.ibp_learning_rate` with the
same schedule shape, never weight decay. Why Adam matters: the IBP KL enters
the objective divided by the training-set size, so its gradient on a
utility logit is ~1e-5; SGD moves the logit by ~1e-6 a step and nothing is
ever pruned, while Adam's step is set by the gradient's sign and
consistency, not its size.
"""

from typing import List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

from tf_slwta.layers import ibp


def split_variables(model: keras.Model) -> Tuple[List[tf.Variable],
                                                 List[tf.Variable]]:
  """(weights, IBP variational parameters) among the trainable variables."""
  ibp_ids = {id(v) for l in ibp.ibp_layers(model) for v in l.trainable_variables}
  weights = [v for v in model.trainable_variables if id(v) not in ibp_ids]
  variational = [v for v in model.trainable_variables if id(v) in ibp_ids]
  return weights, variational


def make_ibp_optimizer(learning_rate, variables: Sequence[tf.Variable]
                       ) -> Optional[keras.optimizers.Optimizer]:
  """Adam for the IBP parameters, built on them; None when there are none.

  Call inside `strategy.scope()`.

  Args:
    learning_rate: a float or schedule (the run's schedule at
      `TrainConfig.ibp_learning_rate`).
    variables: the IBP variational parameters (`split_variables`).
  """
  if not variables:
    return None
  optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
  optimizer.build(list(variables))
  return optimizer


def apply_gradients(optimizer: keras.optimizers.Optimizer,
                    ibp_optimizer: Optional[keras.optimizers.Optimizer],
                    grads: Sequence[tf.Tensor], variables: Sequence[tf.Variable],
                    variational: Sequence[tf.Variable] = ()) -> None:
  """Applies each gradient with its variable's optimizer.

  Args:
    optimizer: the weights' optimizer.
    ibp_optimizer: the IBP parameters' optimizer, or None (then every
      variable goes to `optimizer`).
    grads, variables: matching lists (as `model.trainable_variables`).
    variational: the variables `ibp_optimizer` owns (`split_variables`).
  """
  if ibp_optimizer is None:
    optimizer.apply_gradients(zip(grads, variables))
    return
  owned = {id(v) for v in variational}
  pairs = list(zip(grads, variables))
  optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) not in owned])
  ibp_optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) in owned])
