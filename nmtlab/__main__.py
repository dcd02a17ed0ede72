from nmtlab.cli import main

main()
