from lvisctl.cli.app import main

main()
