#!/usr/bin/env bash
# Installs Fashion-MNIST from Debian's package `dataset-fashion-mnist` (IDX
# files under /usr/share/datasets/fashion-mnist) where apt is available.
# It never fails the build: the tests need no data set, and a run without the
# data stops with a message that says how to get it.
set -u
dir=/usr/share/datasets/fashion-mnist
files="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"

have_data() {
  for f in $files; do [ -s "$dir/$f" ] || return 1; done
}

if have_data; then
  echo "Fashion-MNIST: found in $dir"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "Fashion-MNIST: apt-get is not available here. Put the four IDX .gz files" \
       "($files) in a folder and pass --data_dir=FOLDER, or run once with a" \
       "network and the Keras download will fetch them." >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "Fashion-MNIST: not installed, and installing it needs root. Run" \
         "'sudo apt-get install dataset-fashion-mnist', or pass --data_dir." >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
echo "Fashion-MNIST: installing Debian package dataset-fashion-mnist"
$sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
  $sudo apt-get update -q >/dev/null 2>&1
  $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null
}
if have_data; then
  echo "Fashion-MNIST: installed in $dir"
else
  echo "Fashion-MNIST: apt-get could not install dataset-fashion-mnist;" \
       "pass --data_dir=FOLDER with the four IDX .gz files instead." >&2
fi
exit 0
