from popi_sdk.cli import main

main()
