from llmq.cli import main

main()
