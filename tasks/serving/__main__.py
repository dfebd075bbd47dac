from tasks.serving.server import main

main()
