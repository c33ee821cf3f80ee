from titan_jepa.eval.run import main

main()
