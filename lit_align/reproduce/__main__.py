from lit_align.reproduce.runner import main

main()
