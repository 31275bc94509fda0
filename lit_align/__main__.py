from lit_align.cli import run

run()
