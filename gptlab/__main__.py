from gptlab.cli import entry

entry()
