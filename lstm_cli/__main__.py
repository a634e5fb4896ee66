from lstm_cli.cli import main

main()
