# The developer interface: make run | test | bench | lint | worker
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# The demo's links and its simulator follow PORT (make run PORT=8137).
# The demo runs no beat, so texts held for quiet hours would never go out: quiet hours are off
# in the demo unless NOTIFY_QUIET_HOURS is set (production keeps its 21:00-08:00 default).
DEMO_ENV := DJANGO_DEBUG=1 PORCHLIGHT_PUBLIC_URL=$${PORCHLIGHT_PUBLIC_URL:-http://localhost:$(PORT)} \
	NOTIFY_QUIET_HOURS=$${NOTIFY_QUIET_HOURS-}
# Simulated seconds per real second: 10 plays the demo's hour-long day in about six minutes.
SPEED ?= 10

.PHONY: run test chaos bench lint worker beat migrate demo clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

migrate: $(VENV)/.installed
	DJANGO_DEBUG=1 $(PY) manage.py migrate --noinput

demo: migrate
	$(DEMO_ENV) $(PY) manage.py demo_data

# The demo: SQLite, in-process channel layer and Celery, messages on the console, and a
# simulated routing backend driving the demo deliveries. Ctrl-C stops everything.
run: demo
	@echo "Serving on http://localhost:$(PORT)/ (daphne) with a simulated routing backend. Ctrl-C stops both."
	@# The handler ignores the TERM it sends the group itself, or it would run again and again.
	@# The simulator's once-a-second POSTs are left out of the access log; everything else shows.
	@trap 'trap "" INT TERM; kill 0; wait' INT TERM; \
	$(DEMO_ENV) LOG_LEVEL=$${LOG_LEVEL:-WARNING} PYTHONUNBUFFERED=1 $(PY) manage.py runserver $(PORT) 2>&1 \
		| grep --line-buffered -v 'POST /api/v1/events 200' & \
	$(DEMO_ENV) $(PY) manage.py simulate --url http://127.0.0.1:$(PORT) --speed $(SPEED) & \
	wait

test: $(VENV)/.installed
	$(PY) -m tests.run_all

# RELIABILITY.md's chaos runs (kill -9, pauses, restarts, the 2,000-socket storm): nightly, or
# before a release; about 6 minutes on 2 cores. Needs PostgreSQL and Redis.
chaos: $(VENV)/.installed
	$(PY) -m tests.run_all --chaos

bench: $(VENV)/.installed
	$(PY) -m bench

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DJANGO_DEBUG=1 $(VENV)/bin/mypy config tracking notifications scheduling

worker: $(VENV)/.installed
	$(VENV)/bin/celery -A config worker --loglevel=INFO

beat: $(VENV)/.installed
	$(VENV)/bin/celery -A config beat --loglevel=INFO

clean:
	rm -rf $(VENV) db.sqlite3 db.sqlite3-* staticfiles
