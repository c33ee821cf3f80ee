from titan_jepa.checkpoint.export import main

main()
