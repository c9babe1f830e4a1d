# Two commands on a fresh machine: `make demo` (main job) and `make test`.
# Both create .venv (Python 3.11) and install the pinned stack on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL := 3
# Real data (heart_disease/, medmnist/): by default the shared folder beside the checkout.
TFF_MED_DATA_DIR ?= $(abspath ../shared/data)
export TFF_MED_DATA_DIR

.PHONY: setup setup-gpu demo cluster-demo test clean

$(VENV)/.installed: requirements.txt constraints.txt requirements-nodeps.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), "tff_med needs Python 3.11"'
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# stunnel, the TLS terminator in front of each hospital node's TFF worker (and
# the coordinator's end of each tunnel): Debian's package, pinned.
STUNNEL := stunnel4=3:5.68-2+deb12u1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(VENV)/.stunnel: | $(VENV)/.installed
	command -v stunnel4 >/dev/null || $(SUDO) apt-get install -y -q $(STUNNEL) \
	  || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $(STUNNEL))
	touch $@

setup: $(VENV)/.installed $(VENV)/.stunnel

# GPU: CUDA-enabled TensorFlow 2.14.1 (with its NVIDIA wheels) into the same .venv.
setup-gpu: setup
	$(PY) -m pip install -q 'tensorflow[and-cuda]==2.14.1' -c constraints.txt

demo: setup
	$(PY) -m experiments.compare --dataset=breast_cancer --num_hospitals=3 \
	  --partition=profiles --seeds=1 --output_dir=runs/demo
	$(PY) -m experiments.train --dataset=breast_cancer --num_hospitals=3 \
	  --partition=profiles --dp=record --target_epsilon=1 --batch_size=64 --client_lr=0.5 \
	  --output_dir=runs/demo/dp_record_epsilon1
	$(PY) -m experiments.make_messy_csvs --output_dir=runs/demo/messy
	$(PY) -m experiments.train --dataset=csv --output_dir=runs/demo/messy_fedavg \
	  --csv_files=runs/demo/messy/st_marys.csv,runs/demo/messy/riverside.csv,runs/demo/messy/hillcrest.csv \
	  --label_column=progression --positive_label=Yes --categorical_columns=sex --missing=drop_rows
	$(PY) -m experiments.predict --model_dir=runs/demo/messy_fedavg/saved_model/st_marys \
	  --csv=runs/demo/messy/new_patients.csv --output=runs/demo/messy_scores.csv

# The 4 heart-disease hospitals as 4 local nodes (own data folder, own certificate),
# FedAvg with record-level DP across them over mutual TLS; every process stopped after.
cluster-demo: setup
	$(PY) -m experiments.cluster_demo --output_dir=runs/cluster_demo

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

clean:
	rm -rf $(VENV) runs
