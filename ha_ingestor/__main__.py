from ha_ingestor.cli import main

main()
