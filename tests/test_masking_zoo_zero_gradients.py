"""The masking zoo's toys whose gradients are exactly 0 (quantized input,
saturated logits, a purifier behind stop_gradient): the same test as
test_masking_zoo.py, in a file of its own so the zoo's halves run on two
test processes at once."""

import pytest

import test_masking_zoo as zoo


@pytest.mark.parametrize('name', zoo.ZERO_GRADIENT_TOYS)
def test_the_audit_sees_each_mask_and_escalates_to_the_real_number(name):
  zoo.check_toy(name)
