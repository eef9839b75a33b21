"""`python -m tf_slwta`: the tf_slwta command (the same as `tf-slwta`)."""

from tf_slwta.cli.main import console

if __name__ == '__main__':
  console()
