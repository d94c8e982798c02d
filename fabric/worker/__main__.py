"""Entry point of a worker subprocess: `python -m fabric.worker` (started by WorkerPool)."""

from fabric.worker.main import main

if __name__ == "__main__":
    main()
