from fedbackdoor.cli import main

main()
