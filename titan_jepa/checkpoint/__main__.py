from titan_jepa.checkpoint.manager import main

main()
